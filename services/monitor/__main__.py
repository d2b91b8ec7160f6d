from meshserve.core.lifecycle import main
from services.monitor.service import MonitorService
from services.monitor.settings import MonitorSettings

if __name__ == "__main__":
    main(MonitorService, MonitorSettings)
