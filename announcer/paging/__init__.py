"""On-call paging: integrations open incidents, escalation policies page people step by step, rotations
say who a target is at an instant (design.md, "Paging")."""
