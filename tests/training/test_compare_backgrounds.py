"""``python -m training.compare_backgrounds``: LABEL=BUNDLE candidates, two or more, distinct labels."""

import pytest

from training.compare_backgrounds import main, parse_candidate


def test_candidates_are_label_equals_bundle(tmp_path):
    assert parse_candidate(f"v2={tmp_path}") == ("v2", tmp_path)
    with pytest.raises(Exception, match="LABEL=BUNDLE"):
        parse_candidate("no-label")
    with pytest.raises(SystemExit):
        main([f"v1={tmp_path}"])  # one candidate: nothing to compare
    with pytest.raises(SystemExit):
        main([f"v1={tmp_path}", f"v1={tmp_path}"])  # labels must differ
