"""What people and monitoring see of the relay: presence reports, metrics, alerts, progress and the
relay view. Observers read the roles' facts (synkler.agents) and never change an entry."""
