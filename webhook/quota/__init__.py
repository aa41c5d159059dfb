"""GPU quota: quantities and pod requests (``quantity``, ``requests``), the compiled quota
model (``model``), the usage ledger fed by the pod watch (``ledger``, ``watch``), reservations
shared by replicas (``coordination``) and gauges (``metrics``). The gpu check uses them."""
