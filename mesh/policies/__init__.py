"""Task policies: small objects with explicit methods, called by name from the dispatcher.

The dispatcher calls them in this order, and nowhere else:
1. admission: the payload limit and the queue bound (`mesh.pending`), at submit;
2. age limit (`age_limit.expired`) when a task is picked for dispatch: an expired task is
   dead-lettered (EXPIRED) instead of being sent;
3. delivery limit (`delivery_limit.exceeded`) when a running delivery is lost with its node:
   the poison-pill bound;
4. retry (`retry.RetryPolicy.decide`) when an attempt fails: again after a backoff, or DEAD.
The run timeout is enforced on the AI node (`mesh.executor`), which reports it as a failed
attempt of class TIMEOUT; the ack timeout is the Helper's (`HelperSettings.ack_timeout_s`).
"""
