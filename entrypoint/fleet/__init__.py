"""Fleets: replicas of one app that share a coordination store (LIVE_PULL_FLEET_URL).

store.py is what the updater and the agent ask of a fleet; postgres.py and
kubernetes.py keep it in a store the fleet already has (kubernetes.py in Leases, which
leases.py reads and writes through the pod's service account). Without a store a
replica is on its own (`Solo`), as before fleets.
"""
