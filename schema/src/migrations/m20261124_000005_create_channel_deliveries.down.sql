DROP TABLE channel_deliveries;
