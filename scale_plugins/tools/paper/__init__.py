"""``bench-paper``'s two studies (docs/results.md): :mod:`.pretrained` (SmolLM2-135M-Instruct + LoRA, built-in task
families from :mod:`.tasks` or the user's files) and :mod:`.scratch` (a tiny model from scratch); :mod:`.common` is
what both share."""
