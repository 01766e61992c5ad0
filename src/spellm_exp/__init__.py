"""spellm-exp: reproduce, measure and extend SpeLLM (character-level multi-head decoding, arXiv 2507.16323).

The library is in stage folders, lowest first; a stage imports only its own and lower stages:

    config.py, provenance.py   typed config schemas; where a number came from
    teachers/                  the pretrained (or random-init) causal LMs a SpeLLM is distilled from
    core/                      the method: alphabets, heads, losses, the SpeLLM, scoring, the decode loop
    data/                      distillation text, token blocks, the feature cache
    training/ evaluation/ benchmarks/   distil (Lightning), score (lm-eval), time and size
    experiments/               sweeps and ablations over many SpeLLMs
    reporting/                 the tables and plots of results/
    cli/                       the commands; nothing imports them
    conf/                      the Hydra configs

The other top-level modules (train.py, evaluate.py, table1.py, ...) are shims that keep the documented
`python -m spellm_exp.<command>` form pointing at cli/.
"""
