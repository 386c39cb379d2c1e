"""The local RunPod: a real HTTP server speaking the RunPod REST v2 subset pod-cycle uses, with
pods made of local processes (a real sshd on loopback plus the pod entrypoint)."""

# Each node of a local cluster is a set of local processes (an sshd, the entrypoint, its
# services): a bound that keeps a typo from starting hundreds of them. RunPod's own bound is
# 250 (the spec's maximum, podcycle.config.MAX_NODES).
LOCAL_MAX_NODES = 8

# The word a server writes after its pid in its folder's server.lock once its server.json is
# written: until then, a server that holds the folder without a server.json is starting (it
# stops a crashed server's pods first); after it, one without is damaged
# (podcycle.local.control.check_reachable).
READY = "ready"
