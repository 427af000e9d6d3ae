# The C types of d7y.sim._swarm (to come)
