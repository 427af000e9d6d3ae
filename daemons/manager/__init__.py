"""The manager: clusters, schedulers and seed peers, users, tokens and audits over REST.

``service`` runs it (``d7y manager``), ``api`` is the REST API, ``models`` and
``migrations`` the database, ``searcher`` the choice of schedulers for a dfdaemon.
"""
