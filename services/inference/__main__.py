from meshserve.core.lifecycle import run
from meshserve.core.logs import configure_logging
from services.inference.service import InferenceService
from services.inference.settings import InferenceSettings


def main() -> None:
    settings = InferenceSettings()
    configure_logging("inference", settings.log_level)
    run(lambda: InferenceService(settings))


if __name__ == "__main__":
    main()
