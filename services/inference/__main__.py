from meshserve.core.lifecycle import main
from services.inference.service import InferenceService
from services.inference.settings import InferenceSettings

if __name__ == "__main__":
    main(InferenceService, InferenceSettings)
