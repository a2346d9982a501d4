DROP TABLE staff_sign_in_failures;
DROP TABLE staff;
