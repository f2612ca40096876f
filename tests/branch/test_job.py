"""branch/job.py: the typed request checks its values once, where it is built."""

from __future__ import annotations

import pytest

from scalable_xmr.branch.config import PairTrainerConfig
from scalable_xmr.branch.job import BranchRequest
from scalable_xmr.errors import InputError


def _request(**kw) -> BranchRequest:
    return BranchRequest(run_dir="/runs/r", dataset_uri="/data/d",
                        trainers={"vse": PairTrainerConfig(model="vse")}, **kw)


@pytest.mark.parametrize("groups", ["candidate", "query"])
def test_the_request_takes_either_t2i_group(groups):
    assert _request(t2i_groups=groups).t2i_groups == groups


@pytest.mark.parametrize("groups", ["both", "Query", ""])
def test_the_request_refuses_other_t2i_groups_naming_the_flag(groups):
    with pytest.raises(InputError, match=f"--t2i-groups must be one of candidate, query, got {groups!r}"):
        _request(t2i_groups=groups)


def test_a_run_json_of_the_old_kind_pairs_is_resumed_as_a_branch_run(tmp_path):
    """Branch runs were kind "pairs" up to 0.1.0 (README "Upgrading"): such a run.json reads as
    kind "branch", the resume check accepts it, and the next write says "branch"."""
    import json

    from scalable_xmr.branch.job import BranchRun
    from scalable_xmr.store.run_store import RunStore

    req = BranchRequest(run_dir=str(tmp_path / "run"), dataset_uri="/data/d",
                        trainers={"vse": PairTrainerConfig(model="vse")})
    dataset = {"uri": "/data/d", "splits": {}, "text": "tokens"}
    kind = BranchRun(req, dataset)
    store = RunStore(req.run_dir)
    written = kind.new_meta(store).to_json()
    assert written["kind"] == "branch"
    store.run_json.write_text(json.dumps({**written, "kind": "pairs"}))  # as 0.1.0 wrote it
    stored = store.read()
    assert stored.kind == "branch"
    kind.check_resume(store, stored)  # continues it: nothing refused
    with pytest.raises(InputError, match="run was trained on /data/d, not /data/other"):
        BranchRun(req, {**dataset, "uri": "/data/other"}).check_resume(store, stored)
    store.write(stored)
    assert json.loads(store.run_json.read_text())["kind"] == "branch"
