"""Kubernetes API plumbing shared by every part that reads the cluster (official ``kubernetes`` client).

``client`` builds the ``ApiClient`` from config and runs calls off the event loop;
``reflector`` lists and watches one resource; ``namespaces`` keeps namespace labels.
"""
