from meshserve.core.lifecycle import run
from meshserve.core.logs import configure_logging
from services.feature.service import FeatureService
from services.feature.settings import FeatureSettings


def main() -> None:
    settings = FeatureSettings()
    configure_logging("feature", settings.log_level)
    run(lambda: FeatureService(settings))


if __name__ == "__main__":
    main()
