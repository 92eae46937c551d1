"""The LangGraph agent: typed state, message understanding, nodes and the graph itself."""
