"""A runnable tour of Plural's Python agent API (templates only: no model needed, ~1 minute
the first time while the MovieLens-100K data directory is built, seconds afterwards).

    .venv/bin/python docs/examples/agent_api.py       # add --llm transformers for the packaged SmolLM2

(the project's virtual environment, where ``make setup`` installed Plural; a Python without it
cannot import ``agent``).
"""

from __future__ import annotations

import argparse

from agent.api import PluralAgent


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--llm", default="none", help="none, transformers, openai or vllm")
    ap.add_argument("--user", default="1")
    ap.add_argument("--dataset", default="ml-100k", help="ml-100k or synthetic")
    ap.add_argument("--data-dir", default=None, help="data directory (default: the shared cache; the tour's "
                                                     "feedback changes the user's personas there)")
    args = ap.parse_args(argv)

    agent = PluralAgent.from_dataset(args.dataset, llm=args.llm, data_dir=args.data_dir, progress=True)
    user = args.user

    print("Personas:")
    for p in agent.personas(user):
        print(f"  {p.persona_id} {p.name} ({p.weight:.0%}, v{p.version}): {p.description}")

    recs = agent.recommend(user, k=5, request="a funny animated film")
    print(f"\nRecommendations for 'a funny animated film' (read as: {recs.provenance['request']}):")
    for r in recs.items:
        print(f"  {r.rank}. {r.title} <- {r.persona.name} ({r.attention[r.persona.id]:.0%}); "
              f"evidence: {', '.join(e.title for e in r.evidence)}")
    print("  provenance:", recs.provenance)

    first = recs.items[0]
    why = agent.explain(user, first.item_id)
    print(f"\nWhy {why.title}? {why.explanation}")

    change = agent.feedback(user, first.item_id, "dislike", text="too childish for me")
    ref = change.refinement or {}
    print(f"\nFeedback on {change.title}: persona {change.persona_id} weight "
          f"{ref.get('weight', {}).get('before')} -> {ref.get('weight', {}).get('after')}; "
          f"drift guard {ref.get('guard')}")

    reply = agent.chat(user, "something light and funny tonight")
    print(f"\nChat (thread {reply.thread_id}):\n{reply.response}")
    reply = agent.chat(user, "why the second one?", thread_id=reply.thread_id)
    print(f"\n{reply.response}")
    for line in agent.follow_up(reply).lines():  # what the LLM adds after the reply (nothing without one)
        print(f"  (model) {line}")

    print("\nLatest memory events:")
    for ev in agent.history(user, 5):
        print(f"  [{ev.kind}] {ev.text[:100]}")
    agent.close()


if __name__ == "__main__":
    main()
