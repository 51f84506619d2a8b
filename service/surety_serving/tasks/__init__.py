"""Model kinds as task plug-ins: the protocol (``base``), the registry and the built-in tasks.

Nothing is imported here: the runtime imports ``base`` and ``registry`` only, and the built-in
tasks are imported by the registry when it is first asked (see ``surety_serving.tasks.registry``).
"""
