"""The message contract: encoding upload messages, decoding what a producer sent, publishing to RabbitMQ."""
