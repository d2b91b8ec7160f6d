"""Deployment artefacts generated from meshserve's settings (the Envoy edge). Reads the gateway's settings
class; imported only by the CLI."""

from meshserve.deploy.envoy import (
    EnvoySettings,
    deploy_envoy,
    envoy_config,
    local_settings,
    render_envoy_yaml,
)

__all__ = ["EnvoySettings", "deploy_envoy", "envoy_config", "local_settings", "render_envoy_yaml"]
