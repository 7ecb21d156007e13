"""The root API is tiny on purpose; adding to it is a decision, so it is pinned here."""

import keel


def test_root_api_is_pinned() -> None:
    assert sorted(keel.__all__) == ["App", "__version__"]
    assert keel.App.__name__ == "App"
