"""A checkpoint folder's names, shared by the trainer that writes it and the evaluation and sweep that read
it, with no dependencies:

    checkpoint_000016/
        trainer_state.json     STATE_FILE: step, sampler state, batch mix, metrics, the run's config
        encoder/               ENCODER_DIR: loads with plain transformers / sentence-transformers
            hybrid_encoder.json    ENCODER_CONFIG: pooling, prefixes, max_length (hybrid.spec)
"""

STATE_FILE = "trainer_state.json"
ENCODER_DIR = "encoder"
ENCODER_CONFIG = "hybrid_encoder.json"
