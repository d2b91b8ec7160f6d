from meshserve.core.lifecycle import main
from services.feature.service import FeatureService
from services.feature.settings import FeatureSettings

if __name__ == "__main__":
    main(FeatureService, FeatureSettings)
