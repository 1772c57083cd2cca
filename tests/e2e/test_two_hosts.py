"""Two torchrun agents as two hosts: two network namespaces (iproute2), each with its own
address on a private veth link, one c10d rendezvous, one process per host (DP=2 across the
hosts over gloo). The losses equal the one-host run of the same flags, bit for bit.

The namespaces, link and addresses (10.231.N.1/.2, only inside the namespaces made here) are
created and removed by the test; it needs root (CAP_NET_ADMIN).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from test_pretrain_resume import BASE, PRETRAIN, train_losses
from support.torchrun import child_env, free_port, run_torchrun


def _ip(*args):
    return subprocess.run(["ip", *args], capture_output=True, text=True)


@pytest.fixture
def two_hosts():
    """[(namespace, interface, address)] for host 0 (rendezvous host) and host 1."""
    tag = os.getpid() % 10000
    subnet = 10 + os.getpid() % 240
    hosts = [(f"ponder{tag}h{i}", f"pv{tag}h{i}", f"10.231.{subnet}.{i + 1}") for i in range(2)]
    made = _ip("netns", "add", hosts[0][0])
    if made.returncode != 0:
        pytest.skip(f"needs root for network namespaces: {made.stderr.strip()}")
    try:
        steps = [("netns", "add", hosts[1][0]),
                 ("link", "add", hosts[0][1], "type", "veth", "peer", "name", hosts[1][1])]
        for namespace, interface, address in hosts:
            steps += [("link", "set", interface, "netns", namespace),
                      ("-n", namespace, "addr", "add", f"{address}/24", "dev", interface),
                      ("-n", namespace, "link", "set", interface, "up"),
                      ("-n", namespace, "link", "set", "lo", "up")]
        for step in steps:
            done = _ip(*step)
            assert done.returncode == 0, (step, done.stderr)
        yield hosts
    finally:
        for namespace, _, _ in hosts:
            _ip("netns", "del", namespace)  # removes the veth pair with it


@pytest.mark.slow
def test_data_parallel_across_two_hosts_matches_one_host(tmp_path, two_hosts):
    args = BASE + ["--train-iters", "4"]
    one_host = tmp_path / "one_host.jsonl"
    run_torchrun(PRETRAIN, 2, args + ["--metrics-file", one_host])

    port, metrics = free_port(), tmp_path / "two_hosts.jsonl"
    endpoint = f"{two_hosts[0][2]}:{port}"
    agents = []
    for index, (namespace, interface, address) in enumerate(two_hosts):
        # Both namespaces share this machine's hostname, so name each agent's address itself
        # (--local-addr) and say which one hosts the rendezvous store (is_host).
        command = ["ip", "netns", "exec", namespace, sys.executable, "-m", "torch.distributed.run",
                   "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint,
                   "--rdzv-id", f"two-hosts-{port}", "--rdzv-conf", f"is_host={'true' if index == 0 else 'false'}",
                   "--local-addr", address, *PRETRAIN.split(), *map(str, args)]
        if index == 0:
            command += ["--metrics-file", str(metrics)]  # global rank 0 writes it
        out = open(tmp_path / f"host{index}.log", "w")
        agents.append(subprocess.Popen(command, env=child_env(GLOO_SOCKET_IFNAME=interface), stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True))
    codes = [agent.wait(timeout=600) for agent in agents]
    logs = [(tmp_path / f"host{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], [log[-2000:] for log in logs]
    assert "2 process(es)" in logs[0]
    assert train_losses(metrics) == train_losses(one_host)
