from gateway.service import GatewayService
from gateway.settings import GatewaySettings
from meshserve.core.lifecycle import run
from meshserve.core.logs import configure_logging


def main() -> None:
    settings = GatewaySettings()
    configure_logging("gateway", settings.log_level)
    run(lambda: GatewayService(settings))


if __name__ == "__main__":
    main()
