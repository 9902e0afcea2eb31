"""ai-load-balancer: the LLM-aware load balancer that runs on the proxywasm SDK."""
