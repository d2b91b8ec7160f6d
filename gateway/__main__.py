from gateway.service import GatewayService
from gateway.settings import GatewaySettings
from meshserve.core.lifecycle import main

if __name__ == "__main__":
    main(GatewayService, GatewaySettings)
