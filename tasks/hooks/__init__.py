"""Webhooks: every event of a pool, POSTed signed to configured URLs, off the pool worker.

- tasks.hooks.config: ``Webhook(url, secret)`` and the validation of a configured list
  (``webhooks = [{ url, secret }]``, or WARMPOOL_WEBHOOK_URL + WARMPOOL_WEBHOOK_SECRET);
- tasks.hooks.signing: the ``X-Warmpool-Signature`` header, made and verified;
- tasks.hooks.deliver: the deliverer (``warmpool webhooks run``), one consumer group per
  webhook on each pool's event stream: at least once, resumable, bounded retries.

config and signing are pure standard library (producers and receivers may import them).
"""
