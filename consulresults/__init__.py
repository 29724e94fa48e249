"""consul-results: keep Celery task results in HashiCorp Consul."""

__version__ = "0.1.0.dev0"
