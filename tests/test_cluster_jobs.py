"""Finding the SLURM jobs a killed run left behind (audit.cluster_jobs); the real SLURM run is in test_operations.py."""
from __future__ import annotations

import pytest

from audit.cluster_jobs import QueuedJob, audit_names, describe, jobs_or_none, parse_squeue, queued_jobs, wait_for_jobs


def test_only_this_directorys_jobs_of_these_audits_are_found(tmp_path):
    """By working directory (resolved: a symlinked path is the same folder) and by the audit that leads the plugin's
    wildcards comment; another audit whose name only starts the same (``tiny_vit``) is not ``tiny``'s."""
    work, other = tmp_path / "work", tmp_path / "other"
    work.mkdir(), other.mkdir()
    (tmp_path / "link").symlink_to(work)
    squeue = "\n".join([
        f"11|RUNNING|{work}|rule_train_model_wildcards_tiny",
        f"12|PENDING|{tmp_path / 'link'}|rule_extract_features_wildcards_tiny_00001",
        f"13|RUNNING|{other}|rule_train_model_wildcards_tiny",  # another run's folder
        f"14|RUNNING|{work}|rule_train_model_wildcards_tiny_vit",  # another audit
        f"15|RUNNING|{work}|rule_train_model_wildcards_tinyx",
        f"17|SUSPENDED|{work}|rule_confirm_shortcuts_wildcards_tiny_00000",
        f"16|RUNNING|{work}|an unrelated job",
        "garbage",
    ])
    jobs = parse_squeue(squeue, work, ["tiny"])
    assert [job.job_id for job in jobs] == ["11", "12", "17"] and jobs[1] == QueuedJob("12", "PENDING", "rule_extract_features_wildcards_tiny_00001")
    assert [job.job_id for job in parse_squeue(squeue, work, ["tiny", "tiny_vit"])] == ["11", "12", "14", "17"]


def test_waiting_polls_until_the_queue_is_empty_and_not_at_all_when_it_is():
    queue = [[QueuedJob("1", "RUNNING", "rule_a_wildcards_x")]] * 3 + [[]]
    slept = []
    assert wait_for_jobs(lambda: queue.pop(0), poll_seconds=7, sleep=slept.append) == 3 and slept == [7, 7, 7]
    assert wait_for_jobs(lambda: [], sleep=slept.append) == 0 and len(slept) == 3


def test_without_squeue_there_is_no_job_and_a_failing_squeue_is_an_error_or_a_warning(tmp_path, monkeypatch, caplog):
    """An error for the library; a warning and no job for the restart guard, so that a workstation with SLURM's client
    but no cluster still runs locally."""
    monkeypatch.setenv("PATH", str(tmp_path))
    assert queued_jobs(tmp_path, ["tiny"]) == []
    failing = tmp_path / "squeue"
    failing.write_text("#!/bin/sh\necho 'slurm_load_jobs error: Unable to contact slurm controller' >&2\nexit 1\n")
    failing.chmod(0o755)
    with pytest.raises(RuntimeError, match="Unable to contact slurm controller"):
        queued_jobs(tmp_path, ["tiny"], squeue=str(failing))
    assert jobs_or_none(tmp_path, ["tiny"]) == [] and "could not look for SLURM jobs" in caplog.text


def test_the_audit_names_come_from_the_config_and_long_lists_are_shortened(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("audits:\n  a: {}\n  b_2: {}\n")
    assert audit_names(config) == ["a", "b_2"]
    jobs = [QueuedJob(str(n), "PENDING", f"rule_r_wildcards_a_{n}") for n in range(12)]
    assert describe(jobs, shown=2) == "0 (PENDING, rule_r_wildcards_a_0), 1 (PENDING, rule_r_wildcards_a_1) and 10 more"
