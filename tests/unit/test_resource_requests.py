"""cw.resources: what a job asks for, what a worker says it has."""
import os

import pytest

from cw.resources import describe, gpu_ids, parse_size, request, worker_has


def test_a_request_is_checked_and_put_on_the_wire_as_three_numbers():
    assert request(None) is None and request({}) is None and request({"cpus": 1}) is None
    assert request({"gpus": 1}) == [1, 1, 0]
    assert request({"cpus": 4, "gpus": 2, "mem": "8G"}) == [4, 2, 8 << 30]
    assert request({"mem": 1536}) == [1, 0, 1536]
    assert request({"cpus": 2, "bind": True}) == [2, 0, 0, 1] and request({"bind": True}) == [1, 0, 0, 1]
    assert request({"cpus": 2, "bind": False}) == [2, 0, 0]
    assert describe([2, 0, 0, 1]) == "2 CPUs of its own"
    for bad, said in (({"gpu": 1}, "unknown resource"), ({"cpus": 0}, "cpus=0"),
                      ({"gpus": 1.5}, "gpus=1.5"), ({"cpus": True}, "cpus=True"),
                      ({"mem": "lots"}, "mem='lots'"), ({"mem": -1}, "mem=-1"), ({"bind": 1}, "bind=1")):
        with pytest.raises(ValueError, match=said):
            request(bad)
    with pytest.raises(TypeError, match="dict"):
        request([("gpus", 1)])


def test_sizes_read_as_people_and_slurm_write_them():
    assert [parse_size(v) for v in ("512M", "8G", "1.5T", "8GiB", "100", "2k")] == \
        [512 << 20, 8 << 30, int(1.5 * (1 << 40)), 8 << 30, 100, 2048]
    assert describe([2, 1, 8 << 30]) == "2 CPUs, 1 GPU, 8.0 GiB of memory"
    assert describe([1, 0, 0]) == "1 CPU"


def test_a_worker_finds_its_gpus_where_slurm_and_cuda_say_them():
    assert gpu_ids("auto", {"CUDA_VISIBLE_DEVICES": "0,1", "SLURM_JOB_GPUS": "4,5"}) == ["0", "1"]
    assert gpu_ids("auto", {"SLURM_JOB_GPUS": "4,5"}) == ["4", "5"]
    assert gpu_ids("2", {}) == ["0", "1"]
    assert gpu_ids("1", {"CUDA_VISIBLE_DEVICES": "3,7"}) == ["3"]
    assert gpu_ids("0,2,GPU-ab12", {}) == ["0", "2", "GPU-ab12"]
    assert gpu_ids("none", {"CUDA_VISIBLE_DEVICES": "0"}) == []
    for bad in ("0,0", "0;rm -rf", "a b"):
        with pytest.raises(ValueError, match="--gpus"):
            gpu_ids(bad, {})


def test_a_worker_declares_slurms_allocation_and_never_fewer_cpus_than_executors():
    env = {"SLURM_CPUS_ON_NODE": "8", "SLURM_MEM_PER_NODE": "4096", "CUDA_VISIBLE_DEVICES": "0,1"}
    assert {k: v for k, v in worker_has(None, None, None, 1, env).items() if k != "cpu_ids"} == \
        {"cpus": 8, "mem": 4 << 30, "gpus": "0,1"}
    assert worker_has(None, None, [], 16, env)["cpus"] == 16
    has = worker_has(2, 1 << 30, ["3"], 1, env)
    assert has["gpus"] == "3" and has["cpus"] == 2 and has["mem"] == 1 << 30
    assert has["cpu_ids"].split(",") == [str(c) for c in sorted(os.sched_getaffinity(0))][:2]
    # one GPU, as SLURM gives --gres=gpu:1: the id, not a count of it
    assert worker_has(None, None, gpu_ids("auto", {"CUDA_VISIBLE_DEVICES": "0"}), 1, {})["gpus"] == "0"
    assert gpu_ids("auto", {"CUDA_VISIBLE_DEVICES": ""}) == []  # set empty: none, nvidia-smi not asked
