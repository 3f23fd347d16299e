"""Bringing results home after the launch: the pull daemon (:mod:`.pull`), its automatic start
(:mod:`.autopull`), deleting backend-side copies (:mod:`.clean`) and the launch's progress display
(:mod:`.progress`)."""
