"""Reading what a policy wrote: reasoning markers and token-position log-prob quantiles."""
