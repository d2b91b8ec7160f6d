"""Model quality, pure: exact metrics on joined predictions and labels (`metrics`), AUC estimates with their
variance (`auc`), anytime-valid comparisons of a canary against its baseline (`sequential`) and a seeded,
simulated-clock harness for a rollout judge built on them (`simulation`). No I/O, no gRPC, no clock or RNG of its
own: the monitor service and the gateway's rollout judge import it. Imports only numpy and the standard library."""
