"""LLM-as-judge: the judge prompt, the default judge model and LAGER weight fitting."""
