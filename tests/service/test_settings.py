"""service.settings: the one reading of the model lists (``models``, ``conditional_models``)."""

from service.settings import selects


def test_a_model_list_names_every_version_by_name_or_one_by_name_and_version():
    assert selects(["fashion-glow"], "fashion-glow", "1") and selects(["fashion-glow"], "fashion-glow", "7")
    assert selects(["clipart-glow/2", "x"], "clipart-glow", "2")
    assert not selects(["clipart-glow/2"], "clipart-glow", "1")
    assert not selects(["fashion"], "fashion-glow", "1")  # no prefix match
    assert not selects([], "fashion-glow", "1")
