"""``polyserve tune``: the configuration that serves a model fastest within its latency SLO.

A user tool on the worker's side, run on a laptop, a CI box or (by the operator) as a
Kubernetes Job in the worker image. It starts a real ``polyserve-worker`` on the model
repository, loads one candidate config after another through the worker's repository API,
drives each with the benchmarks' load generator (``loadgen``), and lets Optuna choose the
next candidate. The pieces:

- ``space``: which knobs a model's config has on this hardware (pure);
- ``hardware``: what this machine is (CPU model and features, GPUs);
- ``measuring``: the worker process and one trial's concurrency ramp;
- ``guarding``: a precision change is accepted only within a tolerance of fp32;
- ``searching``: the Optuna study, its pruning rule, the budget;
- ``reporting``: config.pbtxt, the InferenceModel config block, report.txt and report.html;
- ``cli``: the command line, and the arguments the operator renders for its Job.

The worker's serving path never imports this package.
"""
