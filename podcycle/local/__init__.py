"""The local RunPod: a real HTTP server speaking the RunPod REST v2 subset pod-cycle uses, with
pods made of local processes (a real sshd on loopback plus the pod entrypoint)."""
