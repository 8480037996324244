"""Bad input stops the play with the reason, before anything changes."""

import pytest
from conftest import BAD_INPUT, flat


@pytest.mark.parametrize("case", BAD_INPUT.keys())
def test_bad_input_fails_before_changing_anything(playbook_runs, case):
    returncode, output = playbook_runs[case]
    reason = BAD_INPUT[case][1]
    assert returncode != 0
    assert reason in flat(output), output[-3000:]
    recap = flat(output.rsplit("PLAY RECAP", 1)[1])
    assert "changed=0" in recap and "failed=1" in recap, recap
