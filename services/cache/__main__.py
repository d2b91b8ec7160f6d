from meshserve.core.lifecycle import run
from meshserve.core.logs import configure_logging
from services.cache.service import CacheService
from services.cache.settings import CacheSettings


def main() -> None:
    settings = CacheSettings()
    configure_logging("cache", settings.log_level)
    run(lambda: CacheService(settings))


if __name__ == "__main__":
    main()
