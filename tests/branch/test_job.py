"""branch/job.py: the typed request checks its values once, where it is built."""

from __future__ import annotations

import pytest

from scalable_xmr.branch.config import PairTrainerConfig
from scalable_xmr.branch.job import PairsRequest
from scalable_xmr.errors import InputError


def _request(**kw) -> PairsRequest:
    return PairsRequest(run_dir="/runs/r", dataset_uri="/data/d",
                        trainers={"vse": PairTrainerConfig(model="vse")}, **kw)


@pytest.mark.parametrize("groups", ["candidate", "query"])
def test_the_request_takes_either_t2i_group(groups):
    assert _request(t2i_groups=groups).t2i_groups == groups


@pytest.mark.parametrize("groups", ["both", "Query", ""])
def test_the_request_refuses_other_t2i_groups_naming_the_flag(groups):
    with pytest.raises(InputError, match=f"--t2i-groups must be one of candidate, query, got {groups!r}"):
        _request(t2i_groups=groups)
