"""Task policies: small objects with explicit methods, called by name from the dispatcher.

The dispatcher calls them in this order, and nowhere else:
1. admission: the payload limit and the queue bound (`mesh.pending`), at submit;
2. age limit (the task's deadline) when a task is picked for dispatch: an expired task is
   dead-lettered (EXPIRED) instead of being sent; tasks of kinds held back (3, 4) are swept
   once a second instead;
3. circuit breaker (`circuit.Breakers`, `would_allow`) when a picked task would be sent: an
   open breaker of its kind, or of a dependency the kind named, holds the kind back;
4. rate limit (`rate_limit.RateLimits.take`) next: no token holds the kind back. A held-back
   kind's task stays queued: no attempt, no delivery charged. Then a half-open breaker's probe
   is taken (`Breakers.allow`): this task is it;
5. delivery limit when a running delivery is lost with its node, or its child process dies
   under it (`Ack.lost`): the poison-pill bound;
6. retry (`retry.RetryPolicy.decide`) when an attempt fails: again after a backoff, or DEAD;
   the outcome is recorded to the breakers first (`record_success` / `record_failure`).
The run timeout is enforced on the AI node (`mesh.executor`), which reports it as a failed
attempt of class TIMEOUT; the ack timeout is the Helper's (`HelperSettings.ack_timeout_s`).
"""
