"""The rollout daemon: a fixed-rate control loop that runs the policy, hands over to the operator
on pedal down, and records every episode. Nothing slow runs on the control thread."""
