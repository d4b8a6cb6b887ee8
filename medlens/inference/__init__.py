"""The model bundle: card, loading, preprocessing, probabilities, decisions, uncertainty, explanations."""
