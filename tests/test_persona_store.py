"""PersonaStore contract over the in-memory and the SQLite implementations."""

from __future__ import annotations

import pytest

from memory.errors import UnknownUserError, UsageError
from personas.model import Persona, PersonaSet
from personas.store import InMemoryPersonaStore, SqlitePersonaStore


def _set(user="u1", desc="likes space operas", weight=0.6):
    return PersonaSet(user_id=user, personas=[
        Persona(persona_id="p1", user_id=user, name="Space", description=desc, weight=weight,
                evidence=["1", "2"], embedding=[0.6, 0.8]),
        Persona(persona_id="p2", user_id=user, name="Romance", description="likes love stories",
                weight=round(1 - weight, 6), evidence=["3"], embedding=[1.0, 0.0]),
    ])


class PersonaStoreContract:
    @pytest.fixture
    def store(self, tmp_path):
        raise NotImplementedError

    def test_put_get_round_trip(self, store):
        store.put(_set())
        got = store.get("u1")
        assert got.user_id == "u1" and [p.name for p in got.personas] == ["Space", "Romance"]
        assert got.personas[0].embedding == pytest.approx([0.6, 0.8])
        assert [p.version for p in got.personas] == [1, 1]
        assert store.get("nobody") is None and store.users() == ["u1"]

    def test_changes_bump_versions_and_history_is_kept(self, store):
        store.put(_set())
        store.put(_set(desc="loves hard science fiction", weight=0.7), reason="refinement",
                  feedback={"item": "9", "reaction": "like"})
        cur = store.get("u1")
        assert cur.get("p1").version == 2 and cur.get("p1").description == "loves hard science fiction"
        hist = store.versions("u1", "p1")
        assert [v.persona.version for v in hist] == [1, 2]
        assert hist[1].reason == "refinement" and hist[1].feedback == {"item": "9", "reaction": "like"}
        assert cur.get("p2").version == 2  # its weight changed too
        store.put(store.get("u1"))  # unchanged: no new version
        assert len(store.versions("u1", "p1")) == 2

    def test_rollback_restores_text_as_a_new_version(self, store):
        store.put(_set())
        store.put(_set(desc="something else entirely", weight=0.6))
        restored = store.rollback("u1", "p1", 1)
        assert restored.description == "likes space operas" and restored.version == 3
        assert store.get("u1").get("p1").description == "likes space operas"
        assert store.versions("u1", "p1")[-1].reason == "rollback to v1"
        with pytest.raises(UsageError, match="version"):
            store.rollback("u1", "p1", 42)
        with pytest.raises(UnknownUserError):
            store.rollback("ghost", "p1", 1)

    def test_users_are_isolated(self, store):
        store.put_many([_set("a"), _set("b", desc="b's own taste")])
        assert store.get("a").get("p1").description == "likes space operas"
        assert store.get("b").get("p1").description == "b's own taste"
        assert all(v.persona.user_id == "a" for v in store.versions("a"))


class TestInMemoryPersonaStore(PersonaStoreContract):
    @pytest.fixture
    def store(self, tmp_path):
        return InMemoryPersonaStore()


class TestSqlitePersonaStore(PersonaStoreContract):
    @pytest.fixture
    def store(self, tmp_path):
        return SqlitePersonaStore(tmp_path / "p.sqlite")

    def test_reopen_restores_everything(self, tmp_path):
        s = SqlitePersonaStore(tmp_path / "p.sqlite")
        s.put(_set())
        s.put(_set(desc="v2 text"))
        s.close()
        again = SqlitePersonaStore(tmp_path / "p.sqlite")
        assert again.get("u1").get("p1").description == "v2 text"
        assert [v.persona.description for v in again.versions("u1", "p1")] == ["likes space operas", "v2 text"]

    def test_failed_write_leaves_nothing(self, tmp_path, monkeypatch):
        import personas.store as mod

        s = SqlitePersonaStore(tmp_path / "p.sqlite")
        s.put(_set("a"))
        real = mod._dump_set

        def failing(pset):  # fails inside the transaction, after 'a2' was written
            if pset.user_id == "b":
                raise RuntimeError("disk full")
            return real(pset)

        monkeypatch.setattr(mod, "_dump_set", failing)
        with pytest.raises(RuntimeError, match="disk full"):
            s.put_many([_set("a2"), _set("b")])
        assert s.get("a2") is None and s.users() == ["a"]


def test_persona_text_is_bounded():
    with pytest.raises(ValueError):
        Persona(persona_id="p1", user_id="u", name="x" * 200, description="d", weight=1.0)
    with pytest.raises(ValueError):
        Persona(persona_id="p1", user_id="u", name="x", description="d" * 1000, weight=1.0)


@pytest.mark.parametrize("make", [lambda p: InMemoryPersonaStore(), lambda p: SqlitePersonaStore(p / "t.sqlite")])
def test_transaction_keeps_all_or_nothing(tmp_path, make):
    store = make(tmp_path)
    store.put(_set("a"))
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.put(_set("a", desc="changed inside"))
            store.put(_set("b"))
            raise RuntimeError("the other half failed")
    assert store.get("a").get("p1").description == "likes space operas" and store.get("b") is None
    assert len(store.versions("a")) == 2
    with store.transaction():
        store.put(_set("b"))
    assert store.get("b") is not None


@pytest.mark.postgres
class TestPostgresPersonaStore(PersonaStoreContract):
    @pytest.fixture
    def store(self, postgres_db):
        from personas.postgres_store import PostgresPersonaStore

        return PostgresPersonaStore(postgres_db())

    def test_a_second_store_on_the_schema_sees_everything(self, store):
        from personas.postgres_store import PostgresPersonaStore

        store.put(_set())
        store.put(_set(desc="v2 text"))
        again = PostgresPersonaStore(store.db)
        assert again.get("u1").get("p1").description == "v2 text"
        assert [v.persona.description for v in again.versions("u1", "p1")] == ["likes space operas", "v2 text"]
        assert again.get("u1").get("p1").embedding == pytest.approx([0.6, 0.8])

    def test_failed_write_leaves_nothing(self, store, monkeypatch):
        import personas.store as mod

        store.put(_set("a"))
        real = mod._dump_set

        def failing(pset):
            if pset.user_id == "b":
                raise RuntimeError("disk full")
            return real(pset)

        monkeypatch.setattr(mod, "_dump_set", failing)
        with pytest.raises(RuntimeError, match="disk full"):
            store.put_many([_set("a2"), _set("b")])
        assert store.get("a2") is None and store.users() == ["a"]

    def test_transaction_keeps_all_or_nothing(self, store):
        test_transaction_keeps_all_or_nothing(None, lambda _: store)

    def test_compare_and_set_refuses_a_stale_write(self, store):
        from personas.store import PersonaConflictError

        store.put(_set())
        read = store.get("u1")
        store.put(_set(desc="someone else's change"))
        with pytest.raises(PersonaConflictError, match="changed meanwhile"):
            store.put(_set(desc="mine"), expected_versions=store.versions_of(read))
        assert store.get("u1").get("p1").description == "someone else's change"
