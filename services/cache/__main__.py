from meshserve.core.lifecycle import main
from services.cache.service import CacheService
from services.cache.settings import CacheSettings

if __name__ == "__main__":
    main(CacheService, CacheSettings)
