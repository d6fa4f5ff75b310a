
abcd