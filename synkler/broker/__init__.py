"""RabbitMQ: the one place that imports pika (amqp) and the broker users an administrator sets up
(users). Imports only the core at synkler's root."""
