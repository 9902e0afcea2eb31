"""The plugin's entry module: registers the load balancer with the SDK."""

from proxywasm import set_root_context

from .lb_root import LoadBalancerRoot

set_root_context(LoadBalancerRoot)
