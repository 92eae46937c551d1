"""Template persona names and descriptions: distinct names that say what sets a persona apart,
no title repeated, titles used as hints only when nothing else tells two personas apart."""

from __future__ import annotations

from personas.naming import PersonaDraft, TemplatePersonaWriter


def _draft(pid, titles, shares, n=30):
    return PersonaDraft(pid, titles, shares, n_items=n)


def test_two_personas_with_the_same_main_genres_are_told_apart_by_a_genre_they_hold_more_of():
    drafts = [_draft("p1", ["Big Night (1996)", "Breaking the Waves (1996)"], {"Drama": .5, "Comedy": .3, "Romance": .2}),
              _draft("p2", ["Ed Wood (1994)", "Raging Bull (1980)"], {"Drama": .5, "Comedy": .35, "Crime": .15})]
    names = [n for n, _ in TemplatePersonaWriter().write("u", drafts)]
    assert names == ["Drama, Comedy & Romance", "Drama, Comedy & Crime"]


def test_then_by_era_and_only_then_by_a_quoted_title():
    same = {"Drama": .6, "Comedy": .4}
    old = _draft("p1", ["Casablanca (1942)", "Notorious (1946)", "Rebecca (1940)"], same)
    new = _draft("p2", ["Big Night (1996)", "Fargo (1996)", "Swingers (1996)"], same)
    assert [n for n, _ in TemplatePersonaWriter().write("u", [old, new])] == \
        ["Classic Drama & Comedy", "1990s Drama & Comedy"]
    twin = _draft("p3", ["Boys (1996)", "Fargo (1996)"], same)
    names = [n for n, _ in TemplatePersonaWriter().write("u", [new, twin])]
    assert names == ["Drama & Comedy (\u201cBig Night\u201d)", "Drama & Comedy (\u201cBoys\u201d)"]  # quoted: reads as a title


def test_a_title_is_never_repeated_in_a_description():
    d = _draft("p1", ["Ulee's Gold (1997)", "Ulee's Gold (1997)", "Boys (1996)"], {"Drama": 1.0}, n=5)
    _, desc = TemplatePersonaWriter().write("u", [d])[0]
    assert desc.count("Ulee's Gold") == 1 and "Boys" in desc


def test_names_are_distinct_for_every_user_of_the_synthetic_data(synthetic_engine):
    store = synthetic_engine.persona_store
    for u in store.users():
        names = [p.name for p in store.get(u).personas]
        assert len(set(names)) == len(names), names
