"""The local RunPod: a real HTTP server speaking the RunPod REST v2 subset pod-cycle uses, with
pods made of local processes (a real sshd on loopback plus the pod entrypoint)."""

# Each node of a local cluster is a set of local processes (an sshd, the entrypoint, its
# services): a bound that keeps a typo from starting hundreds of them. RunPod's own bound is
# 250 (the spec's maximum, podcycle.config.MAX_NODES).
LOCAL_MAX_NODES = 8
