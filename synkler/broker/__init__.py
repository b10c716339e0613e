"""RabbitMQ: the one place that imports pika (amqp), the names of an instance's objects and users
(names), and the broker users an administrator sets up (users). Imports only the core at synkler's
root."""
